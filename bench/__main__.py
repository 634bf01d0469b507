from bench import noise, sensorthings, sim, wire


def main() -> None:
    sim.run()
    wire.run()
    noise.run()
    sensorthings.run()


if __name__ == "__main__":
    main()
