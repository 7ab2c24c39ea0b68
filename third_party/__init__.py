"""Adapters that plug the portable SAAR core (`cleaner_jax.saar`) into other JAX RL codebases."""
