"""{{ {'dcgan': 'A DCGAN', 'wgan-gp': 'A WGAN-GP', 'conditional': 'A conditional GAN'}[cookiecutter.variant] }} trained with manualopt.

Modules: ``model`` (the ``GAN``), ``networks`` (the generator and the {{ 'critic' if cookiecutter.variant == 'wgan-gp' else 'discriminator' }}), ``data`` (training data),
``samples`` (sample grids), ``cli`` (the command line){{ ', ``shapes`` (demo pictures)' if cookiecutter.data != 'digits' else '' }}.
"""

__version__ = "0.1.0"
