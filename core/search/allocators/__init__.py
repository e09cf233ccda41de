"""Allocators: one module each, registered with core/search/registry.register_allocator."""
