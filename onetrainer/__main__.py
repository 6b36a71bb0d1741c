"""`python -m onetrainer` runs the same CLI as the `onetrainer` console script."""

from onetrainer.commands.app import main

if __name__ == "__main__":
    main()
