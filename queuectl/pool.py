"""placeholder"""


def worker_rows(home):
    return []
