from .store import ArrayStore, cache_summary, clear_cache

__all__ = ["ArrayStore", "cache_summary", "clear_cache"]
