from bench import (flood, forward, gateway, hostile, http_clients, noise, ota_heap, payload, provision, sensorthings,
                   sim, start_heap, store, tls, wire)


def main() -> None:
    sim.run()
    start_heap.run()
    ota_heap.run()
    tls.run()
    wire.run()
    noise.run()
    payload.run()
    gateway.run()
    flood.run()
    http_clients.run()
    forward.run()
    sensorthings.run()
    store.run()
    provision.run()
    hostile.run()


if __name__ == "__main__":
    main()
