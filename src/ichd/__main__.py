"""``python -m ichd ...`` runs the ``ichd`` command (also what ``torchrun -m ichd train cnn ...`` starts)."""

from ichd.cli.main import main

if __name__ == "__main__":
    main()
