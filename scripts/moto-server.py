"""moto's DynamoDB server, answering one request at a time.

moto applies a TransactWriteItems all-or-nothing but not isolated from concurrent
requests: under moto_server's threaded server, two transactions conditioned on one
item (two claims of one unique value) can both pass their checks and both commit,
which real DynamoDB never allows. Served one request at a time (moto is bound by
Python's GIL anyway, so little is lost), every request is isolated.

    python3 scripts/moto-server.py HOST PORT
"""

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

host, port = sys.argv[1], int(sys.argv[2])
run_simple(host, port, DomainDispatcherApplication(create_backend_app), threaded=False)
