"""Benchmarks: each method's and each metric's time against its bare cost (plain gradient passes, the forwards and
explains it makes), the 224x224 case with peak memory, the Python API with and without the allocator tuning,
vit_tiny's transformer rules, evalxai against Quantus, and the end-to-end run.

    python -m evalxai.bench [--models lenet vgg_bn] [--batch 128] [--repeats 15] [--methods ...] [--out DIR]
    python -m evalxai.bench --metrics all           # every registered metric (or name some; none: skip)
    python -m evalxai.bench --imagenet [--models vgg16 resnet50] [--device cuda] [--memory-budget 1.5GB]   # 224^2
    python -m evalxai.bench --api        # LRP / gradient from evalxai.explain, with and without tune_allocator()
    python -m evalxai.bench --vit        # attnlrp / cp_lrp on vit_tiny, time / one gradient pass (target 1.5x)
    python -m evalxai.bench --quantus [--quantus-python PY]   # evalxai vs Quantus 0.6 on tests/fixtures/quantus
    python -m evalxai.bench --targets [--quantus-python PY]   # issue 29's targets in one run: measured vs wanted

(``evalxai bench ...`` is the same command.) Timings are interleaved (every call once per round, rounds repeated)
and medians are taken, so drift on a shared machine hits all calls alike.

Modules: ``timing`` (what every bench shares: interleaved rounds, the plain gradient pass, Markdown tables),
``methods`` (methods on MNIST-size models, vit_tiny, the API in fresh processes), ``imagenet`` (the 224 case:
VGG-16 and ResNet-50 defined here, peak memory), ``metrics`` (metrics against the passes they make), ``quantus``
(evalxai against Quantus), ``targets`` (issue 29's targets from those benches, one summary), ``end_to_end``
(``python -m evalxai`` cold and warm), ``__main__`` (the command line).
"""
