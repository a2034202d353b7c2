"""The plates that models and objectives share: every local site of a model lies in the
``data`` plate at dim −1 (``pyro_vae.models.base.data_plate``), so objectives allocate one
plate dimension; enumerated and particle dimensions go to its left. A module of its own so
that models and objectives both read it and neither imports the other."""

#: The ``max_plate_nesting`` of every model: the ``data`` plate.
MAX_PLATE_NESTING = 1
