"""The paper's CIFAR-10 study (He et al. 2015, Section 4.2): plain and residual
networks of 20-110 (and 1202) layers, several seeds each, their error table,
Figure 6 and layer responses (Figure 7), resumable from its own workdir.

* `study`: the runs of a study and their configs; `runner`: runs them (seeds
  together in one step, networks in parallel processes); `worker`: one run
  and its summary; `report` and `figures`: the table and the figures.

    python -m resnet_jax.reproduce --study=cifar10 --workdir=runs/paper --scale=0.01
"""
