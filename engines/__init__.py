"""Model engines: landmark and generator networks and the backends that run them."""
