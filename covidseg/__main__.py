"""Allow ``python -m covidseg``."""

from covidseg.cli import main

if __name__ == "__main__":
    main()
