from bench import noise, sensorthings, sim, tls, wire


def main() -> None:
    sim.run()
    tls.run()
    wire.run()
    noise.run()
    sensorthings.run()


if __name__ == "__main__":
    main()
