"""cleaner-jax: CLEANER (SAAR-purified trajectories) for agentic RL in JAX/Flax.

Kept import-light on purpose: `import cleaner_jax.saar` must not pull in JAX.
"""
