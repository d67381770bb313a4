"""adcache_loader: render, deploy, verify, back up and restore the adcache Functions library."""

from adcache_loader.paths import library_source
from adcache_loader.render import RenderError, render

__all__ = ["RenderError", "library_source", "render"]
