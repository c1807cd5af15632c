"""Data for MAST: the seeded synthetic benchmark (``mast.data.synthetic``) and image-folder loaders."""
