"""Episodes as Minari datasets: ``apexrl collect`` from a saved policy, and the actors' own stream."""
