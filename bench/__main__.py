from bench import gateway, noise, sim, wire


def main() -> None:
    sim.run()
    wire.run()
    noise.run()
    gateway.run()


if __name__ == "__main__":
    main()
