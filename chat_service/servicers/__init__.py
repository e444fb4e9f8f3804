"""gRPC servicers: translate requests, call the logic modules, map errors."""
