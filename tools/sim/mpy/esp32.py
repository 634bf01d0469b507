# `esp32` as on the board, as far as a node firmware uses it. NVS namespaces live in state.json
# (committed values only: what was set and not committed is lost at a reset, as the API allows).
import micropython
import simcore as _c

HEAP_DATA = 4
HEAP_EXEC = 1
WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True

_NOT_FOUND = -4354       # ESP_ERR_NVS_NOT_FOUND
_BAD_LENGTH = -4364      # ESP_ERR_NVS_INVALID_LENGTH
_KEY_TOO_LONG = -4361    # ESP_ERR_NVS_KEY_TOO_LONG


if _c.mcu == "esp32":
    @micropython.native
    def raw_temperature():
        """The original ESP32's internal sensor, in Fahrenheit (uncalibrated)."""
        _c.tick()
        return int((_c.scen.value("temp", _c.t_s(), 15.0) + 18.0) * 9 / 5 + 32)
else:  # mcu_temperature() exists on the S2, S3, C3 and C6 only
    @micropython.native
    def mcu_temperature():
        _c.tick()
        return int(_c.scen.value("temp", _c.t_s(), 15.0) + 18.0)


@micropython.native
def idf_heap_info(capabilities):
    return [(113200, 61540, 55296, 58120), (15072, 14928, 14848, 14928)]


class NVS:
    @micropython.native
    def __init__(self, namespace):
        self._ns = namespace
        self._w = dict(_c.nvs.get(namespace) or {})   # working copy

    @micropython.native
    def _get(self, key, kind):
        v = self._w.get(key)
        if v is None or type(v) is not kind:
            raise OSError(_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
        return v

    @micropython.native
    def _set(self, key, v):
        if len(key) > 15:
            raise OSError(_KEY_TOO_LONG, "ESP_ERR_NVS_KEY_TOO_LONG")
        self._w[key] = v

    @micropython.native
    def set_i32(self, key, value):
        self._set(key, ((value + 0x80000000) & 0xFFFFFFFF) - 0x80000000)

    @micropython.native
    def get_i32(self, key):
        return self._get(key, int)

    @micropython.native
    def set_blob(self, key, value):
        import ubinascii
        self._set(key, ubinascii.hexlify(bytes(value)).decode())

    @micropython.native
    def get_blob(self, key, buffer):
        import ubinascii
        b = ubinascii.unhexlify(self._get(key, str))
        if len(buffer) < len(b):
            raise OSError(_BAD_LENGTH, "ESP_ERR_NVS_INVALID_LENGTH")
        buffer[:len(b)] = b
        return len(b)

    @micropython.native
    def erase_key(self, key):
        if key not in self._w:
            raise OSError(_NOT_FOUND, "ESP_ERR_NVS_NOT_FOUND")
        del self._w[key]

    @micropython.native
    def commit(self):
        _c.nvs[self._ns] = dict(self._w)
