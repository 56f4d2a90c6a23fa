"""The manualopt recipe book: GANs and a SAM classifier that train on CPU with ``ManualOptimizationModule``.

Every recipe is a module of this package with a ``LightningCLI`` entry point, run from the repository root::

    python -m examples.dcgan_digits fit --config examples/configs/dcgan_digits.yaml

The shared pieces live one concept per module: ``digits_data`` (the bundled digits), ``classifier`` (the digits
classifier whose features define the Fréchet distance), ``frechet`` (the metric), ``mixtures`` (the 2-D Gaussian
mixtures and their mode-coverage measure), ``networks``, ``digits_gan`` (the base class of the digits GANs),
``artifacts`` (sample pictures, curves and the end-of-run summary), ``progress`` (console output) and ``cli`` (the
command line every recipe shares). ``python -m examples.results`` regenerates the results table.
"""
