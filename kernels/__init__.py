"""The GPU benchmark and check scripts of issue 4 (run as ``PYTHONPATH=. python kernels/<script>.py``).

A regular package, so that ``from kernels.bench import ...`` finds these files and not Hugging Face's
``kernels`` package, which transformers (5.25, a core dependency) installs into site-packages: a directory
without ``__init__.py`` loses to an installed regular package whatever the order of ``sys.path``."""
