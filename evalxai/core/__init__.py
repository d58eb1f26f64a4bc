"""The floor methods and metrics stand on: reversible model state (``guard``), memory budgets and chunking
(``memory``), per-sample seeds (``seeding``), reference inputs (``baselines``), target scores (``scoring``), input
checks (``validate``) and atomic files, the cache and code fingerprints (``files``). Nothing here imports a method,
a metric or a run."""
