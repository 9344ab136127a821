"""Tell, in under a minute, whether this environment is fit to train on a GPU, and if not, why.

Run it as `verify` inside an image or `python -m verify` on a host. Each check runs in a process of
its own under a timeout (see `runner`), so a crash or a hang in CUDA, NCCL or a DataLoader becomes
a failed row in the report instead of a stuck job. At run time this package needs only the
standard library and torch.
"""
