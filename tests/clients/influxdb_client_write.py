"""Writes points through the official InfluxDB 2 Python client (influxdb-client from PyPI) with
its batching write API, as an application would. Used by tests/http_clients.rs.

usage: influxdb_client_write.py URL TOKEN BUCKET RUN N
Writes N points `py,run=RUN v=<i>i <base + i ms>`; exits 1 if the client reported an error.
"""

import sys

from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import WriteOptions

BASE_MS = 1_700_000_000_000


def main() -> int:
    url, token, bucket, run, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    errors = []
    with InfluxDBClient(url=url, token=token, org="lineship-test") as client:
        if not client.ping():
            print("ping failed", file=sys.stderr)
            return 1
        options = WriteOptions(batch_size=1_000, flush_interval=200, max_retries=3)
        with client.write_api(
            write_options=options,
            error_callback=lambda _conf, _data, e: errors.append(repr(e)),
        ) as write_api:
            for i in range(n):
                point = (
                    Point("py")
                    .tag("run", run)
                    .field("v", i)
                    .time(BASE_MS + i, WritePrecision.MS)
                )
                write_api.write(bucket=bucket, record=point)
    if errors:
        print("client errors:", errors[:3], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
