# `socket` as on the ESP32, over the unix port's real sockets (a real Mosquitto on 127.0.0.1 works
# through it), cut by the simulated Wi-Fi: while the station has no link every operation fails as
# on the board, and a connection made over an earlier link is dead (ECONNRESET) when used again.
# Addresses are the board's (ip, port) tuples. Each operation costs a fixed virtual time, as a
# Wi-Fi round trip would (the loopback broker's own timing is neither the board's nor repeatable).
# A socket is a stream (io.IOBase: readinto, write, ioctl), so the board's `ssl`/`tls` module
# (mbedtls) wraps it as on the ESP32: TLS records go through this shim, and the Wi-Fi cuts them.
# A peer that does not answer (a gateway gone silent: no RST, no ICMP) costs the board's time, not
# the host's (the virtual clock stands still in a blocking host call): a blocking connect or read
# that gets nothing within 2 real seconds (the loopback answers in milliseconds) charges the
# virtual clock what the board would wait, its settimeout() or, without one, lwIP's own giving up
# (in _io), and raises as the board does.
import io
import micropython
import usocket as _s
import simcore as _c
import network as _n

AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_RAW = 3
IPPROTO_IP = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
SOL_SOCKET = 0xFFF
SO_REUSEADDR = 4
TCP_NODELAY = 1


@micropython.native
def _sa(addr):
    return _s.getaddrinfo(addr[0] or "0.0.0.0", addr[1])[0][-1] if isinstance(addr, tuple) else addr


@micropython.native
def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    _c.tick()
    if not _n._up():
        raise OSError(-202)  # as lwIP's getaddrinfo without a network
    try:
        a = _s.sockaddr(_s.getaddrinfo(host, port, _s.AF_INET, _s.SOCK_STREAM)[0][-1])
    except (OSError, IndexError):
        raise OSError(-202)
    return [(AF_INET, type or SOCK_STREAM, proto, "", (_s.inet_ntop(_s.AF_INET, a[1]), a[2]))]


class socket(io.IOBase):
    @micropython.native
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0):
        _c.tick()
        self._s = _s.socket(_s.AF_INET, type if type in (1, 2) else 1)
        self._link = None
        self.settimeout(None)

    @micropython.native
    def _io(self, name, us, *a):
        # on the link the connection was made over, or ECONNRESET (and the socket is closed)
        t = _n._link_t()
        if t is None or t != self._link:
            self.close()
            _c.count("socket_cut")
            raise OSError(104)  # ECONNRESET
        _c.advance(us)
        try:
            return getattr(self._s, name)(*a)
        except OSError as e:
            if e.errno != 110 or self.timeout == 0:   # ETIMEDOUT: nothing within 2 s (settimeout)
                raise e
        # A silent peer: the board waits its timeout, or until lwIP gives up (ESP-IDF's defaults):
        # a connect after the SYN and 12 retries 1.5 s apart (19.5 s); unacknowledged data after
        # 12 retries backing off to 192 s (22 min: the watchdog first). (New names cost the
        # simulator's heap: a pool of interned strings.)
        t = 19500000 if name == "connect" else 1341000000
        _c.advance(t if self.timeout is None else min(t, int(self.timeout * 1000000)))
        raise OSError(116)   # ETIMEDOUT (the ESP32's newlib number)

    @micropython.native
    def connect(self, addr):
        self._link = _n._link_t()
        if self._link is None:
            _c.advance(3000)
            raise OSError(113)  # EHOSTUNREACH
        self._io("connect", 20000, _sa(addr))
        try:  # umqtt writes a packet in pieces: without this, Nagle and delayed ACKs cost the host
            self._s.setsockopt(6, 1, 1)   # 40 ms of real time per packet (virtual time is unaffected)
        except OSError:
            pass

    @micropython.native
    def sendto(self, buf, addr):
        self._link = _n._link_t()
        return self._io("sendto", 1000, buf, _sa(addr))

    @micropython.native
    def recvfrom(self, n):
        d, a = self._io("recvfrom", 2000, n)
        a = _s.sockaddr(a)
        return d, (_s.inet_ntop(_s.AF_INET, a[1]), a[2])

    @micropython.native
    def write(self, *a):
        return self._io("write", 1000, *a)

    @micropython.native
    def read(self, *a):
        return self._io("read", 2000, *a)

    @micropython.native
    def readinto(self, *a):
        return self._io("readinto", 2000, *a)

    @micropython.native
    def readline(self):
        return self._io("readline", 2000)

    @micropython.native
    def send(self, buf):
        return self._io("send", 1000, buf)

    @micropython.native
    def recv(self, n):
        return self._io("recv", 2000, n)

    sendall = write

    @micropython.native
    def setblocking(self, flag):
        self.settimeout(None if flag else 0)

    @micropython.native
    def settimeout(self, t):
        self.timeout = t   # the firmware's: None blocks, 0 does not
        self._s.settimeout(0 if t == 0 else 2)   # the host waits 2 s at most (see the top)

    @micropython.native
    def setsockopt(self, level, opt, val):
        if opt == SO_REUSEADDR:
            self._s.setsockopt(_s.SOL_SOCKET, _s.SO_REUSEADDR, val)

    @micropython.native
    def bind(self, addr):
        self._s.bind(_sa(addr))

    @micropython.native
    def listen(self, n=2):
        self._s.listen(n)

    @micropython.native
    def ioctl(self, req, arg):
        # The stream protocol, as the TLS layer uses it: 4 = close. No poll (3): nothing in the
        # firmware polls a socket.
        if req == 4:
            self.close()
        return 0

    @micropython.native
    def makefile(self, *a, **k):
        return self

    @micropython.native
    def close(self):
        try:
            self._s.close()
        except OSError:
            pass

    @micropython.native
    def __enter__(self):
        return self

    @micropython.native
    def __exit__(self, *a):
        self.close()
