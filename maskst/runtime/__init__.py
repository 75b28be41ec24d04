"""Runtime: runners per backend, numpy schedulers, the denoising pipeline and maskst-run."""
