"""The old home of the sampling-method tests, split into test files named after the modules
(test_atom_guidance, test_particle_guidance, test_cads, …); its helpers are re-exported here for the
test files that import them."""

from tiny_sd import energy_gradient, mean_pairwise_distance, no_hooks, sample, sd_pipe, stable_diffusion

__all__ = ["energy_gradient", "mean_pairwise_distance", "no_hooks", "sample", "sd_pipe", "stable_diffusion"]
