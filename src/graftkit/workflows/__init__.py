"""Workflows: several runs of the training engine, driven from above.

``compare`` (strategies x seeds on one split), ``freeze_auto`` (measure freeze depths, train the
best), ``label_efficiency`` (accuracy against labelled images per class) and ``self_training``
(rounds of fit + pseudo-labels). Each calls :func:`graftkit.engine.fit`; nothing below imports them.
Import the submodules directly (``from graftkit.workflows.compare import compare``).
"""
