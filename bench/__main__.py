from bench import forward, noise, sensorthings, sim, tls, wire


def main() -> None:
    sim.run()
    tls.run()
    wire.run()
    noise.run()
    forward.run()
    sensorthings.run()


if __name__ == "__main__":
    main()
