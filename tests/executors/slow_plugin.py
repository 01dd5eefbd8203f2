"""A test plugin: the native adapter, slowed down per batch, registered as ``kind: slow_native``.

It lives outside evalkit, so a Ray worker only finds it because the executor imports the driver's
plugin modules in each worker. The delay makes a unit last long enough that a worker killed after
its first cell is reliably killed mid-unit.
"""

from __future__ import annotations

import time
from typing import Any

from evalkit.models.base import register_adapter
from evalkit.models.native_adapter import NativeAdapter

DELAY_S = 0.15


@register_adapter
class SlowNativeAdapter(NativeAdapter):
    kind = "slow_native"

    def predict(self, input_ids: Any, positions: Any) -> Any:
        time.sleep(DELAY_S)
        return super().predict(input_ids, positions)
