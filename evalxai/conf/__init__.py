"""The Hydra config tree of evalxai (package data; ``@hydra.main(config_path="conf")`` finds it through this
package, so an installed wheel runs from any folder). The checkout's top-level ``conf`` links here."""
