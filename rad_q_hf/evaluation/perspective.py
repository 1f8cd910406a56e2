"""A small Perspective API client: rate-limited, retried on 429 / 5xx, stdlib only.

The service is being retired; it stays an optional judge (`--toxicity-judge perspective`) for those who still have
a key. Texts the API refuses (400: e.g. an unsupported language) score NaN, which the metrics ignore.
"""

import json
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable

DEFAULT_ENDPOINT = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"
API_KEY_ENV = "PERSPECTIVE_API_KEY"


class PerspectiveError(RuntimeError):
    """The Perspective API could not be reached or kept failing after the retries."""


class PerspectiveClient:
    """Scores texts' TOXICITY one request at a time.

    Args:
        api_key: the key; default `$PERSPECTIVE_API_KEY`.
        endpoint: the `comments:analyze` URL (tests point it at a loopback server).
        requests_per_second: the quota to stay under (the default project quota is 1 QPS).
        max_retries: retries of one text on 429 / 5xx / network errors, with exponential back-off (or the server's
            `Retry-After`).

    Example:

    ```python
    >>> client = PerspectiveClient(api_key="KEY", requests_per_second=2)
    >>> client.request_body("you are great")["requestedAttributes"]
    {'TOXICITY': {}}

    ```
    """

    def __init__(
        self,
        api_key: str | None = None,
        endpoint: str = DEFAULT_ENDPOINT,
        requests_per_second: float = 1.0,
        max_retries: int = 6,
        backoff_seconds: float = 1.0,
        timeout: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.api_key = api_key or os.environ.get(API_KEY_ENV)
        if not self.api_key:
            raise PerspectiveError(
                f"The Perspective judge needs an API key: set ${API_KEY_ENV} (or use the offline default "
                "`--toxicity-judge profanity-check`)."
            )
        self.endpoint, self.max_retries, self.backoff, self.timeout = endpoint, max_retries, backoff_seconds, timeout
        self.interval = 1.0 / requests_per_second
        self.sleep, self._last = sleep, -math.inf

    @staticmethod
    def request_body(text: str) -> dict:
        return {
            "comment": {"text": text},
            "languages": ["en"],
            "requestedAttributes": {"TOXICITY": {}},
            "doNotStore": True,
        }

    def score(self, texts: list[str]) -> list[float]:
        return [self.score_one(text) for text in texts]

    def score_one(self, text: str) -> float:
        data = json.dumps(self.request_body(text)).encode()
        url = f"{self.endpoint}?key={self.api_key}"
        for attempt in range(self.max_retries + 1):
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                self.sleep(wait)
            self._last = time.monotonic()
            request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = json.loads(response.read())
                return float(body["attributeScores"]["TOXICITY"]["summaryScore"]["value"])
            except urllib.error.HTTPError as error:
                if error.code == 400:  # the API refuses this text (language, length): unscorable, not fatal
                    return math.nan
                if error.code != 429 and error.code < 500:
                    raise PerspectiveError(f"Perspective API answered {error.code}: {error.read()[:300]!r}") from error
                retry_after = error.headers.get("Retry-After")
                delay = float(retry_after) if retry_after else self.backoff * 2**attempt
            except urllib.error.URLError:  # connection refused, timeout: retried like a 5xx
                delay = self.backoff * 2**attempt
            if attempt < self.max_retries:
                self.sleep(delay)
        raise PerspectiveError(
            f"Perspective API still failing after {self.max_retries} retries ({url.split('?')[0]})."
        )
