"""``python -m graftkit ...`` is ``graft ...``; torchrun starts ranks this way
(``torchrun --nproc-per-node N -m graftkit train DATA_DIR ...``)."""
from .cli import main

if __name__ == "__main__":
    main()
