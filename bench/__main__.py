from bench import forward, noise, sim, wire


def main() -> None:
    sim.run()
    wire.run()
    noise.run()
    forward.run()


if __name__ == "__main__":
    main()
