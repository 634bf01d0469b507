# umqtt.simple with a timeout on its socket (docs/reliability.md, "The gateway's address goes
# silent"). umqtt makes its socket inside connect() and blocks on it for ever: to a gateway that
# died (no RST, no ICMP) lwIP tries a connect for about 20 s, and a PUBACK's wait lasts until the
# watchdog resets the node; meanwhile the main loop, and the microphone's audio, stand still.
# Here every socket call of umqtt waits _WAIT_S at most, then raises OSError (ETIMEDOUT), which
# uplink.py takes as any failure of the connection. node.main() imports it once the start's code
# is gone; this module itself is umqtt's `socket` from then on (socket(), getaddrinfo()).
import usocket
import umqtt.simple

_WAIT_S = const(5)   # a connect, a TLS handshake's read, a CONNACK, SUBACK or PUBACK: on a LAN well under 1 s
getaddrinfo = usocket.getaddrinfo
last = None   # the plain socket, under TLS too (a TLS socket has no settimeout)


def socket():
    global last
    last = usocket.socket()
    last.settimeout(_WAIT_S)
    return last


class Client(umqtt.simple.MQTTClient):
    def wait_msg(self):
        try:
            return umqtt.simple.MQTTClient.wait_msg(self)
        finally:   # umqtt left its socket blocking for ever (setblocking(True)): for its next read
            last.settimeout(_WAIT_S)


umqtt.simple.socket = __import__(__name__)
