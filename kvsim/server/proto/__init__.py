"""Generated protobuf and gRPC modules for kvsim's KVCM-compatible services.

The ``*.proto`` files here are the source; ``scripts/gen_proto.sh`` regenerates the
``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` modules, which are checked in and must not
be edited by hand. ``meta_service.proto`` is package ``kv_cache_manager.proto.meta``
(``MetaService``), ``admin_service.proto`` package ``kv_cache_manager.proto.admin``
(``AdminService``), as in Alibaba's Tair KVCache Manager.
"""
