"""The floor that turns a config into files: the experiment pipeline (``pipeline``), the run directory writer
(``run_dir``) and its identity (``identity``), paper reproductions (``reproduce``), the generated YAML (``configs``),
the ``evalxai`` command (``cli``) and the allocator tuning it applies (``allocator``)."""
