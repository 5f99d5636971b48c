"""Read side of the exchange: projector (Kafka -> Redis views), read API and WS /stream."""
