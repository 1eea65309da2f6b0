"""The job lifecycle, one room per verb: the record (record), reading jobs (views), the state machine
(state), the recovery policy (policy), launching (launch, userdata, wheel), recovering (recover),
stopping (stop), following (watch), cost, health, the status document (status) and artifacts."""
