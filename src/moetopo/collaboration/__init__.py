"""Expert collaboration matrices S (CT-MoE's object): building them from a checkpoint's
learned parameter, from routing or from router rows, and what is measured on them (row
entropy, spectrum, stationary distribution, agreement with distance neighbours, domain
specialisation). Functions of arrays only."""
