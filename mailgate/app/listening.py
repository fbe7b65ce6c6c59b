"""A port the gateway binds at start-up, before twistd drops privileges: one in use stops start-up."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.error import CannotListenError

if TYPE_CHECKING:
    from mailgate.app.service import GatewayService  # which starts these


class StartupListener(StreamServerEndpointService):
    """Bound in privilegedStartService; a failure to bind names the config key and exits, not just logs.

    `key` and `address` make the start-up line ("KEY: cannot listen on ADDRESS: ...");
    `_bound` is called with the listening port once bound.
    """

    def __init__(self, endpoint: Any, factory: Any, gateway: GatewayService, key: str, address: str) -> None:
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True  # a port in use must stop start-up, not just log
        self._gateway, self._key, self._address = gateway, key, address

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as exc:
            self._gateway._fail_startup(f"{self._key}: cannot listen on {self._address}: {exc.socketError}")
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port: Any) -> Any:
        return port
