"""Publishing: wire framing (pure) and ZeroMQ output sockets."""
