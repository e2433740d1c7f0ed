"""How the model's arithmetic runs on this machine: the linear-layer kernels (fused, prepacked,
weight-streaming, int8), layerskip's native CPU kernels and their build, whole decoder sublayers as
one native call, the ``torch.compile`` step, thread control, and the one policy that decides among
them (dtype, linear and attention kernels, what ``--compile`` may fuse)."""
