"""``python -m {{ cookiecutter.package_name }}``: the command line of the console script."""

from {{ cookiecutter.package_name }}.cli import main

if __name__ == "__main__":
    main()
