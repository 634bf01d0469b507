from bench import forward, noise, sensorthings, sim, store, tls, wire


def main() -> None:
    sim.run()
    tls.run()
    wire.run()
    noise.run()
    forward.run()
    sensorthings.run()
    store.run()


if __name__ == "__main__":
    main()
