from bench import noise, sim, wire


def main() -> None:
    sim.run()
    wire.run()
    noise.run()


if __name__ == "__main__":
    main()
