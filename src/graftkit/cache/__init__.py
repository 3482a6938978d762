from .store import ArrayStore, CacheError, cache_summary, clear_cache, ensure_cache_root, is_graftkit_cache

__all__ = ["ArrayStore", "CacheError", "cache_summary", "clear_cache", "ensure_cache_root", "is_graftkit_cache"]
