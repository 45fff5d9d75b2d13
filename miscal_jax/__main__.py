from miscal_jax.app.cli import console

console()
