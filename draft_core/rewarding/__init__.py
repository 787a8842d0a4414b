"""What rewards share: image checks (``checks``), differentiable preprocessing that mirrors official
processors (``preprocess``), helpers for pretrained reward networks (``pretrained``) and weighted sums
of rewards (``weighted``)."""
