"""Generated gRPC/protobuf stubs of the align wire contract (package ``align.v1``).

Do not edit: regenerate with ``make proto`` (``python -m align._protogen``).
"""
