"""Protocol front ends (CRL/OCSP status publication; ACME, SCEP and EST later): wire formats over HTTP.

Between the REST API and the services: handlers here parse a protocol message, call one service
function and write the protocol's answer, as the API's routers do for JSON.
"""
